"""Configuration: the JSON Schema shipped in the package, loading, validation, defaults."""
from wire_gateway.config.loader import (  # noqa: F401
    AggregateSettings,
    Config,
    ConfigError,
    HttpSettings,
    Limits,
    PolicySpec,
    RestartPolicy,
    ServerSpec,
    StoreSettings,
    default_document,
    find_config_path,
    load_config,
    parse_config,
    register_secrets,
    schema_path,
    validation_errors,
)
