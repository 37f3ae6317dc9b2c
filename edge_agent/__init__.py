"""Gateway-side vibration anomaly detection agent (no TensorFlow: TFLite runtime only)."""

__version__ = "0.1.0"
