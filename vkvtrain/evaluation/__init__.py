"""BLINK evaluation (lmms-eval's protocol by default): data protocol, answer parsing, choice scoring, latent
probes, reports, sharding over processes, and ``compare`` with its paired statistics (statistics.py)."""
