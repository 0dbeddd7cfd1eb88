"""lockstep.toml: the project's configuration (model, loading, generated sample)."""

from lockstep.config.loading import CONFIG_FILE_NAME, find_config, load_config
from lockstep.config.model import (
    CodeConfig,
    DatabaseConfig,
    FilesConfig,
    ProjectConfig,
    RepositoryConfig,
    RetentionConfig,
)

__all__ = [
    "CONFIG_FILE_NAME",
    "CodeConfig",
    "DatabaseConfig",
    "FilesConfig",
    "ProjectConfig",
    "RepositoryConfig",
    "RetentionConfig",
    "find_config",
    "load_config",
]
