"""The model as the runtime runs it: a bundle's towers, tokenizer and preprocessing.

``bundle`` (the manifest and its checks), ``images`` (decoding, resizing,
normalising), ``tokenizer``, ``backends`` (onnxruntime; ``create_backend``),
``tensorrt`` (the TensorRT backend), ``encoder`` (:class:`~tbps_runtime.model.encoder.Encoder`:
towers in, embeddings out) and ``attention`` (the explain graphs' attention maps).
"""
