"""Name → plugin class registry shared by every trainer, with entry-point discovery.

A plugin is registered under a *kind* (the hook family it serves, e.g. ``"reward_scaling"``, ``"kl_controller"``,
``"reward_loss"``) and a *name* (``"running_meanstd"``). Third-party packages declare, in their pyproject::

    [project.entry-points."icegrt_trl.plugins"]
    my_scaler = "my_pkg.plugins:MyScaler"

and the class must carry ``kind`` and ``name`` class attributes. Pure functions are registered the same way, with
the kind and name given: ``register_plugin(fn, kind="kl_estimator", name="k4")``; :func:`registered` returns
them. Entry points are loaded lazily, on the first look-up that misses, so importing icegrt_trl stays cheap.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "icegrt_trl.plugins"

_REGISTRY: dict[str, dict[str, type]] = {}
_entry_points_loaded = False


class PluginRegistryError(ValueError):
    """An unknown plugin name, or a plugin of the wrong kind."""


def register_plugin(cls: type | None = None, *, kind: str | None = None, name: str | None = None):
    """Class decorator (or function) registering `cls` under ``cls.kind``/``cls.name`` (or the given ones)."""

    def wrap(c: type) -> type:
        k, n = kind or getattr(c, "kind", None), name or getattr(c, "name", None)
        if not k or not n:
            raise PluginRegistryError(f"{c.__name__} needs `kind` and `name` class attributes to be registered.")
        existing = _REGISTRY.setdefault(k, {}).get(n)
        if existing is not None and existing is not c:
            raise PluginRegistryError(f"A {k} plugin named {n!r} is already registered ({existing.__qualname__}).")
        _REGISTRY[k][n] = c
        return c

    return wrap(cls) if cls is not None else wrap


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        register_plugin(ep.load())


def available_plugins(kind: str) -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY.get(kind, {}))


def registered(kind: str, name: str) -> Any:
    """The object registered as `kind`/`name` itself — how pure functions (KL estimators, advantage estimators,
    policy/value losses, GRM regularizers) are looked up."""
    if name not in _REGISTRY.get(kind, {}):
        _load_entry_points()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise PluginRegistryError(
            f"Unknown {kind} {name!r}. Available: {available_plugins(kind)}. Third-party functions register with "
            f"register_plugin(fn, kind={kind!r}, name=...) or through the entry-point group {ENTRY_POINT_GROUP!r}."
        ) from None


def resolve_plugin(kind: str, spec: Any, config: Any = None, **kwargs) -> Any:
    """Turn a config string into a plugin instance of `kind`; instances pass through after a kind check.

    A name is built with ``cls.from_config(config, **kwargs)`` when the class has it (every
    :class:`~icegrt_trl.plugins.base.Plugin` does), else ``cls(**kwargs)``.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        got = getattr(spec, "kind", None)
        if got is not None and got != kind:
            raise PluginRegistryError(f"Plugin {spec!r} is a {got!r} plugin, not a {kind!r} plugin.")
        return spec
    if spec not in _REGISTRY.get(kind, {}):
        _load_entry_points()
    try:
        cls = _REGISTRY[kind][spec]
    except KeyError:
        raise PluginRegistryError(
            f"Unknown {kind} plugin {spec!r}. Available: {available_plugins(kind)}. Third-party plugins register "
            f"through the entry-point group {ENTRY_POINT_GROUP!r}."
        ) from None
    from_config = getattr(cls, "from_config", None)
    return from_config(config, **kwargs) if from_config is not None else cls(**kwargs)
