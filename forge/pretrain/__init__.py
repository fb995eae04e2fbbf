"""Phase 1's technique: the resumable pretraining loop (``trainer``) and its curriculum-stage data mixes (``stages``)."""
