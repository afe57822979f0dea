"""modeconn: loss surfaces, mode connectivity and fast ensembling of DNNs.

A library and a DVC pipeline for Garipov et al., "Loss Surfaces, Mode
Connectivity, and Fast Ensembling of DNNs" (NeurIPS 2018).
"""

__version__ = "0.1.0"
