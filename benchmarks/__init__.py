"""Benchmarks: ``python -m benchmarks.run`` (speed, against transformers and the machine's limits)
and the evaluation scripts `eval_tokenizer.py`, `eval_labeler_iu.py`."""
