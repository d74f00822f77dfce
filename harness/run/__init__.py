"""The referee: one (method, dataset, seed, budget, track) → one stored run record."""
