"""fraudops on AWS: the declared pipeline exported as Step Functions state machines and a CloudFormation
template (``fraudops export aws``), and the code that runs there — the container's SageMaker entry points
and the Lambda handlers.

This ``__init__`` imports nothing: the Lambda's bundle carries it with the handler module alone.
"""
