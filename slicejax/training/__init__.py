"""Training the models of one group together on the model axis: the trainer and what it runs on."""
