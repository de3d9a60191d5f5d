"""The models kdexp trains: MLP, CNN, CIFAR ResNets, torchvision by name, all `StagedNet`s so that a
family can cut any of them into exits; `factory` builds one from its config."""
