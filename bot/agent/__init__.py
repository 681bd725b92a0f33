"""The agent: the model client, the prompts and the tool loop that returns the next step."""
