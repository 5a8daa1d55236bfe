"""The speech product built on the framework: an embedded speech-text corpus (text from Debian's
packages spoken by flite and Piper voices, k-means units, a resynthesiser), an external ASR judge,
the paper's TTS protocol, evaluation, `zipper transcribe`/`speak`/`report`, and the demo.

It depends on the framework core (`zipper_jax/*.py`), never the other way round."""
