"""The AWS client side: `clients` (SageMaker, CloudFormation), `pipeline` (upsert, start, wait,
status of the SageMaker pipeline), `stack` (the CloudFormation stack in infra/template.yaml)."""
