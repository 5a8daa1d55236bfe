"""Pre-trained Llama-family decoders in and out of the framework: Hugging Face safetensors and
llama.cpp GGUF files read into towers (`zipper import`), towers written back (`zipper export`).

It depends on the framework core (`zipper_jax/*.py`), never the other way round."""
