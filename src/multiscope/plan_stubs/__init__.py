"""plan_stubs."""
