"""internvideo3 tools that run after `pip install`: training (TRL subclasses), the long-video agent, console scripts.

The model itself is not here: it ships as flat remote-code files (`configuration_internvideo3.py`,
`modeling_internvideo3.py`, `processing_internvideo3.py`) loaded with `from_pretrained(..., trust_remote_code=True)`,
so everything in this package reaches the model through the Auto classes, exactly as a Hub user does.
"""
