"""Training and evaluation of the cascade: patch data, the training loop, metrics, evaluation.

Kept apart from the serving path (`cascade.model`, `noise`, `sampler`, `painter`, `roots`,
`pyramid`), which never imports it.
"""
