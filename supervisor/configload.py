"""The config and the imapd.conf it names, loaded and cross-checked: what the daemon and every
command that acts on Cyrus start from (without importing the daemon).

``cyrus.sync_client`` and ``cyrus.master`` are filled in where this host's Cyrus has them
(cyrus/layout.py); the coordination section's TLS files are loaded once to prove they work.
"""

from __future__ import annotations

from pathlib import Path

from . import config as configmod
from .cyrus import imapdconf, layout


class ConfigProblem(Exception):
    """The config or imapd.conf is unusable; the message is the full report."""


def load_checked(path: Path) -> tuple[configmod.Config, imapdconf.ImapdConf]:
    """The config and the imapd.conf it names, cross-checked; ConfigProblem lists all problems."""
    try:
        cfg = configmod.load(path)
    except configmod.ConfigError as exc:
        raise ConfigProblem(exc.report()) from None
    cfg = configmod.replace(cfg, cyrus=layout.resolve(cfg.cyrus))   # sync_client, master
    try:
        imapd = imapdconf.load(cfg.cyrus.imapd_conf)
    except imapdconf.ImapdConfError as exc:
        raise ConfigProblem(configmod.ConfigError(cfg.source, [f"cyrus.imapd_conf: {exc}"])
                            .report()) from None
    problems = imapdconf.cross_check(cfg, imapd)
    if cfg.coordination is not None:
        from .coord.settings import file_problems

        problems += file_problems(cfg.coordination)
    if problems:
        raise ConfigProblem(configmod.ConfigError(cfg.source, problems).report())
    return cfg, imapd
