"""Exceptions raised at the edge agent's boundaries.

Every error the product raises on purpose derives from ``AgentError``::

    AgentError
    ├── FrameError    bytes or a payload that are not a valid frame (binary.py, csv_lines.py, mqtt_payload.py, json_mapping.py)
    ├── BundleError   a model bundle that is missing, corrupt or inconsistent (bundle.py)
    ├── UploadError   an upload record that cannot be encoded, decoded or delivered
    ├── SignatureError  a signed message (rollout, receipt) whose signature or key is not trusted (signing.py)
    └── ConfigError   a configuration file or value that fails validation (config.py)

Input errors (``FrameError``, malformed ``UploadError``) are counted and dropped by the
agent's loops; they never stop the agent.
"""


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class FrameError(AgentError):
    """Bytes or an MQTT payload that do not decode to a valid frame."""


class BundleError(AgentError):
    """A model bundle that cannot be trusted: missing files, bad digest, mismatched shapes."""


class UploadError(AgentError):
    """An upload record that is malformed or cannot be delivered."""


class SignatureError(AgentError):
    """A signed message that is unsigned, signed by a key that is not trusted, or altered."""


class ConfigError(AgentError):
    """A configuration value that fails validation; the message names the key."""
