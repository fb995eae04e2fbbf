"""Phase 5's technique: curriculum levels, their training stage and level accuracy, the value prompts (``levels``)."""
