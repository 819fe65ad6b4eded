"""How a job's images leave the worker: ``images`` (formats), ``size`` (the JSON RunPod will send),
``upload`` (S3 through boto3) with its ``bucket_config`` (the environment), ``delivery`` (the policy that
chooses inline or upload). Importing this package imports none of its modules; Pillow and boto3 load only
when an image is converted or uploaded.
"""
