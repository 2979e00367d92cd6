"""infra/template.yaml deployed into moto's CloudFormation (in-process), then inspected: one
stack for the whole package (the `aws` fixture in conftest.py), checked per concern in
test_stack.py, test_roles.py, test_triggers.py and test_image.py; shared helpers in stack.py.

What moto's CloudFormation does and does not do (moto 5.2), and how each gap is covered:
- Not created at all (moto warns and skips): AWS::S3::BucketPolicy, AWS::IAM::OIDCProvider,
  AWS::SageMaker::ModelPackageGroup, AWS::SageMaker::MlflowTrackingServer. Bucket policies are
  resolved with moto's own intrinsic-function resolver against the deployed stack, applied with
  PutBucketPolicy and evaluated; the OIDC trust is tested with the provider ARN built from
  pseudo parameters (CreateGitHubOidcProvider=false); the other two are checked statically
  (tests/unit/test_infra_template.py).
- MLflow on (EnableMlflowTrackingServer=true) cannot be deployed: moto fails on the Output's
  GetAtt of the unsupported tracking server; cfn-lint checks that branch.
- AWS::S3::Bucket applies only BucketEncryption and Tags (versioning, public access block,
  lifecycle, logging, notifications are ignored): those are checked on the template
  (tests/unit/test_infra_template_storage.py).
- AWS::IAM::Role inline `Policies` come back from GetRolePolicy as Python repr, not JSON; they
  are parsed with ast.literal_eval and re-put as JSON so moto's IAM enforcement can read them.
- moto enforces identity policies once `set_initial_no_auth_action_count` is active (used for
  "the role cannot reach other buckets"), but knows few condition keys: aws:SecureTransport is
  never in its request context, so the TLS deny is evaluated with infra/iam_policy.py instead.
- EventBridge TestEventPattern is not implemented: each deployed rule's (resolved) pattern is
  copied onto a probe bus with an SQS target, and events are put there.
- AWS::CodeBuild::Project is not created either, so the ImageBuildProjectName output is absent
  (tests/integration/test_image_build.py creates the project through CodeBuild's API) and a
  `${ImageBuildProject}` inside a Sub stays unresolved (the builder policy's test puts the
  project's Name there, as CloudFormation would); the project's role is created and checked here.
- AWS::Lambda::Function drops KmsKeyArn and DeadLetterConfig (checked on the template, in
  tests/unit/test_infra_template_triggers.py; the dead-letter queues are created) and hands a
  Number parameter into Environment as a number.
- moto's IAM enforcement authorizes SageMaker requests against resource "*" and fills no
  condition keys (sagemaker:ModelApprovalStatus, s3:prefix), so scoped SageMaker statements
  never match there: what the roles may do in SageMaker, and with condition keys, is evaluated
  with infra/iam_policy.py (here on the deployed documents, and in
  tests/unit/test_infra_template_triggers.py); S3 object access is probed for real, signed as
  each role.
- AWS::ECR::Repository keeps its name and tag immutability but drops ImageScanningConfiguration
  and EncryptionConfiguration (moto reads the template's keys as API keys) and LifecyclePolicy:
  the first two are checked on the template (tests/unit/test_infra_template_image.py); the
  lifecycle policy is resolved and put through ECR's API, which validates it.
"""
