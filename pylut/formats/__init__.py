"""GGUF, safetensors, GPTQ and Hugging Face readers, the block-quant decoders, and the
packed-model cache: every file format pylut opens, turned into matrices for the C forward pass."""
