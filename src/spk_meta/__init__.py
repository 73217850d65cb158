"""spk-meta: multi-fidelity meta-learning (Reptile) for interatomic potentials, as a SchNetPack plugin.

Sub-packages mirror SchNetPack's layout: ``data`` (task databases, writers),
``datasets`` (the embedded ethanol data), ``task`` (Lightning tasks), ``train``
(training utilities such as the checkpoint-IO plugin), ``cli`` (the ``spkmeta`` tool).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spk-meta")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from spk_meta import resolvers as _resolvers

_resolvers.register()
