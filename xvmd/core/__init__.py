"""The fencing core: policy, intake, the request pipeline, operations and the executor."""
