"""Built-in editing methods: each package registers itself (``register_method`` in its ``__init__.py``)."""

from . import ft_l, grace, memit, memoir, rome, wise  # noqa: F401  (importing a package registers its method)
