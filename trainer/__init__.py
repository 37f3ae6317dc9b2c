"""Workstation side: data loading, training, threshold calibration and TFLite export.

Only ``trainer`` submodules that train or export may import TensorFlow, and only lazily;
importing ``trainer`` itself or ``edge_agent.contract.recordings`` never does (the edge agent reuses the loaders).
"""
