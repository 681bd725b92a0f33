"""What every command shares: the config file it names and how it ends (exit codes)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bot.config import Settings, default_config_path, load_settings

EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG: systemd does not restart-loop on a broken config


def config_path(args: argparse.Namespace) -> Path:
    return args.config or default_config_path(os.environ)


def load(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args))


def fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"talkbot: {message}\n")
    return code
