"""CloudFormation for the AWS side (`template.yaml`) and a small IAM policy evaluator used by
the tests to check what the template's policies allow."""
