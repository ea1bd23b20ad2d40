"""Field types shared by the settings models (``secretscope.config``, ``secretscope.delivery.config``).

:data:`ConfigPath` marks a setting that names a file or directory. The loader finds every such
field through the marker and resolves a relative value against the directory of the config file
that set it, so which fields are paths is declared once, on the field, never listed by hand.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any


class _PathMarker:
    """Metadata of :data:`ConfigPath`; its presence in a field's annotation is the declaration."""

    def __repr__(self) -> str:
        return "ConfigPath"


PATH_MARKER = _PathMarker()

# A path from the config: relative values are relative to the file that names them.
ConfigPath = Annotated[str, PATH_MARKER]


def is_config_path(annotation: Any) -> bool:
    """Whether ``annotation`` is :data:`ConfigPath`, possibly inside ``Optional``/``Union``."""
    if typing.get_origin(annotation) is Annotated:
        return PATH_MARKER in annotation.__metadata__
    return any(is_config_path(arg) for arg in typing.get_args(annotation))


def field_is_path(field: Any) -> bool:
    """Whether a pydantic ``FieldInfo`` is a :data:`ConfigPath` (pydantic moves the metadata of a
    bare ``Annotated`` onto the field, and keeps it inside ``X | None``)."""
    return PATH_MARKER in field.metadata or is_config_path(field.annotation)
