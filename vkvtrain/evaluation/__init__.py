"""BLINK evaluation: data protocol, answer parsing, choice scoring, latent probes and reports."""
