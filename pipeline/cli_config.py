"""``secretscope config show``: the effective configuration and where each value came from.

The output is YAML that loads back to the same settings: every value, the default's included,
with a trailing comment naming its origin (``default``, the ``--config`` file,
``env SECRETSCOPE_STORE_URL`` or ``--store``). A list is replaced as a whole by a layer, so its
origin is on its key. Passwords in URLs are masked, so the output can be pasted into a ticket.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
import yaml

from secretscope.redact import mask_url

if TYPE_CHECKING:  # the config models (pydantic) load when a command needs them, not for --help
    from secretscope.config import Provenance, Settings

config_app = typer.Typer(no_args_is_help=True, help="The effective configuration.")

# scheme://user:password@host...: the password runs to the last "@" (a URL should have "@" or "/"
# in a password percent-encoded, but a hand-written one may not): better too much masked than a
# password shown
_COMMENT_COLUMN = 48


def masked(value: str) -> str:
    """``value`` with the password of a URL in it replaced by ``***``."""
    return mask_url(value)


def _mask_all(value: Any) -> Any:
    if isinstance(value, str):
        return masked(value)
    if isinstance(value, dict):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_all(v) for v in value]
    return value


def _flow(value: Any) -> str:
    """One YAML value on one line (a scalar, or a list or mapping in flow style)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.strip()[1:-1]


def _lines(doc: dict[str, Any], prov: Provenance, loc: tuple[str, ...] = (),
           pad: str = "") -> list[tuple[str, str | None]]:
    """(YAML line, origin or None) for a mapping of the effective config."""
    out: list[tuple[str, str | None]] = []
    for key, value in doc.items():
        here = loc + (key,)
        if isinstance(value, dict) and value:
            out.append((f"{pad}{key}:", None))
            out += _lines(value, prov, here, pad + "  ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append((f"{pad}{key}:", prov.origin(here)))
            for item in value:
                first = sorted(item, key=lambda k: (k != "type", k != "name"))  # what it is first
                out += [(f"{pad}  {'- ' if i == 0 else '  '}{k}: {_flow(item[k])}", None)
                        for i, k in enumerate(first)]
        else:
            out.append((f"{pad}{key}: {_flow(value)}", prov.origin(here)))
    return out


def render(settings: Settings, prov: Provenance) -> str:
    """The effective config as YAML, each value commented with its origin."""
    from secretscope.config import DEFAULT_CONFIG, DEFAULT_ORIGIN

    layers = " < ".join(f"{DEFAULT_ORIGIN} ({DEFAULT_CONFIG})" if o == DEFAULT_ORIGIN else o
                        for o in prov.dirs)
    text = [f"# effective configuration, lowest precedence first: {layers}",
            "# relative paths are resolved against the file that names them"]
    doc = _mask_all(settings.model_dump(mode="json"))
    for line, origin in _lines(doc, prov):
        text.append(f"{line.ljust(_COMMENT_COLUMN)}  # {origin}" if origin else line)
    return "\n".join(text) + "\n"


@config_app.command("show")
def show(
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML config merged over the embedded default."),
    store: Optional[str] = typer.Option(None, "--store", help="SQLAlchemy URL, overrides "
                                        "store.url."),
) -> None:
    """Print the effective configuration (the embedded default, --config merged over it,
    SECRETSCOPE_STORE_URL, --store) as YAML, with where each value came from."""
    from secretscope.config import load_layered

    overrides = {"store__url": store} if store else {}
    settings, prov = load_layered(config, overrides_origin="--store", **overrides)
    typer.echo(render(settings, prov), nl=False)
