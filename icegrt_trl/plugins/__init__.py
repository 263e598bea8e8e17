"""Plugins: small objects with one concern each, called by the trainers at named hooks.

Selected by a config string (``"reward_scaling=running_std"`` style names resolved through the registry) or
passed as instances. Third parties register through the entry-point group ``icegrt_trl.plugins``.
"""

from .registry import PluginRegistryError, available_plugins, register_plugin, resolve_plugin

__all__ = ["PluginRegistryError", "available_plugins", "register_plugin", "resolve_plugin"]
