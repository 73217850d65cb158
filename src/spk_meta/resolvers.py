"""OmegaConf resolvers our Hydra configs use.

``${spkmeta.ethanol_db:NAME}``: absolute path of the SchNetPack database built from the
embedded ethanol file ``NAME`` (built on first use, in the cache directory);
``${spkmeta.organic_db:NAME}``: the same for the embedded organic case.
"""

from omegaconf import OmegaConf


def _ethanol_db(name: str) -> str:
    from spk_meta.datasets import ethanol_multilevel

    return str(ethanol_multilevel()[name].db)


def _organic_db(name: str) -> str:
    from spk_meta.datasets import organic_multilevel

    return str(organic_multilevel()[name].db)


RESOLVERS = {"spkmeta.ethanol_db": _ethanol_db, "spkmeta.organic_db": _organic_db}


def register() -> None:
    """Register our resolvers once (idempotent; Hydra's plugin import calls this too)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
