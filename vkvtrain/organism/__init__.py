"""The model organism: a small MLM of a real family class, trained on CPU on a synthetic world with known ground
truth, whose image key/value tokens hold what its answers do not use.

- :mod:`~vkvtrain.organism.world`: scenes of textured shapes with exact masks, identities, positions, parts.
- :mod:`~vkvtrain.organism.questions`: taught QA types and never-taught BLINK-format subtasks (with points).
- :mod:`~vkvtrain.organism.perception`: the world's probe-suite datasets (few-shot masks, part keypoints).
- :mod:`~vkvtrain.organism.train`: stage a (dense vision pretraining) and stage b (taught QA).
- :mod:`~vkvtrain.organism.groundtruth`: the measurements against the random-init control.
- :mod:`~vkvtrain.organism.build`: ``build_command`` (``organism build``) and ``ensure_organism`` (``organism://``).
- :mod:`~vkvtrain.organism.experiment`: every intervention on the organism (``organism experiment``, ``make organism``).

Kept free of imports: ``load_mlm`` reads ``organism.names`` at start-up.
"""
