"""Plugins: small objects with one concern each, called by the trainers at named hooks.

Selected by name in a config field (e.g. ``PPOConfig(reward_scaling="running_std")``, resolved through the
registry) or passed as instances. Third parties register through the entry-point group ``icegrt_trl.plugins``.
"""

from .base import Plugin
from .registry import PluginRegistryError, available_plugins, register_plugin, registered, resolve_plugin

__all__ = ["Plugin", "PluginRegistryError", "available_plugins", "register_plugin", "registered", "resolve_plugin"]
