"""One job: the experiment, the context its family runs in, the loop, checkpoints, devices, the
model store, pre-flight checks and the sweep callbacks."""
