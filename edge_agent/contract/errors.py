"""Exceptions raised at the edge agent's boundaries.

Every error the product (edge_agent, trainer, firmware_sim) raises on purpose derives from ``AgentError``;
``tests/test_architecture.py`` fails on an exception class defined elsewhere that does not, or is not listed here::

    AgentError
    ├── FrameError        bytes or a payload that are not a valid frame (binary.py, csv_lines.py, mqtt_payload.py,
    │   │                 json_mapping.py)
    │   └── PayloadTooLarge   a payload refused unparsed for its size (mqtt_payload.py)
    ├── BundleError       a model bundle that is missing, corrupt or inconsistent (bundle.py)
    │   └── RolloutError  a rollout message or bundle refused (rollout.py; also a SignatureError)
    ├── UploadError       an upload record that cannot be encoded, decoded or delivered; a state file (spool) that
    │   │                 is not the agent's
    │   └── TrendError    the trend file is not the agent's or cannot be used (edge_agent/trend.py)
    ├── SignatureError    a signed message (rollout, receipt) whose signature or key is not trusted (signing.py)
    ├── AnswerError       a technician's answer that cannot be taken (its ``reason``), or an answers file that is
    │                     not the agent's (answer.py)
    ├── ConfigError       a configuration file or value that fails validation (config.py)
    ├── DataFormatError   a recording that cannot be read: names the file, line, column (recordings/errors.py;
    │                     also a ValueError)
    ├── ExportError       an exported model that must not be served: non-builtin ops, failed parity
    │                     (trainer/export.py; also a RuntimeError)
    ├── RetrainRefused    a retrained model the gate refuses (trainer/retrain.py; also a ValueError)
    └── IdConflict        a collected record whose id is stored with other content (trainer/dataset.py)

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
