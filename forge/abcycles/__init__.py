"""Phase 6's technique: the A/B cycle driver (``driver``) and the prompt proposals (``prompt_variants``)."""
