"""Keys spk-meta adds to SchNetPack's flat ``inputs`` dict (see ``schnetpack.properties``)."""

#: index of the task (level of theory) a structure belongs to, ``long``, shape ``(n_molecules,)``
#: after collation; the task's name is ``TaskDataModule.task_names[index]``.
task = "_task"
