"""PyTorch embedders (backbones) and margin heads. torch is imported here and in export/ only."""
