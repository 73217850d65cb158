"""Hydra search-path plugin: appends spk-meta's configs to SchNetPack's ``spktrain``/``spkpredict``.

Hydra imports every module in the ``hydra_plugins`` namespace package and calls each
``SearchPathPlugin``. Appending (not prepending) means SchNetPack's own configs win any
name clash; our config names are chosen not to clash (tested).
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

SPK_META_CONFIGS = "pkg://spk_meta.configs"


def _is_schnetpack_app(search_path: ConfigSearchPath) -> bool:
    return any("schnetpack" in (element.path or "") for element in search_path.get_path())


class SpkMetaSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if _is_schnetpack_app(search_path):
            # importing spk_meta registers the OmegaConf resolvers our configs use
            import spk_meta  # noqa: F401

            search_path.append(provider="spk-meta", path=SPK_META_CONFIGS)
