from spk_meta.utils.atomic import atomic_path

__all__ = ["atomic_path"]
