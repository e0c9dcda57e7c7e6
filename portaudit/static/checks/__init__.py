"""The static rules (:mod:`.rules`) and the per-manifest runner that applies them (:mod:`.runner`)."""
