"""Model packs: a folder of ONNX files plus a manifest that declares every convention."""
