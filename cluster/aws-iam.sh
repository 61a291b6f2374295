#!/usr/bin/env bash
# One-time IAM setup for cluster/aws.yaml: instance profiles `mimray-head` (launches and stops
# workers, hands them their profile, reads the DLAMI parameter, bucket and image) and
# `mimray-worker` (bucket and image only), with the policies in cluster/iam/, and EC2's Spot
# service-linked role.
#
#   cluster/aws-iam.sh BUCKET          # with an AWS login that may create IAM roles
#
# Re-running it updates the policies and creates nothing twice. `aws iam delete-*` in reverse
# order removes it all. tests/test_cluster_aws_launch.py runs it against moto.
set -euo pipefail
bucket=${1:?usage: cluster/aws-iam.sh BUCKET}
account=$(aws sts get-caller-identity --query Account --output text)
here=$(cd "$(dirname "$0")" && pwd)
policy=$(mktemp)
trap 'rm -f "$policy"' EXIT
trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'

for name in head worker; do
  role=mimray-$name
  aws iam get-role --role-name "$role" > /dev/null 2>&1 ||
    aws iam create-role --role-name "$role" --assume-role-policy-document "$trust" > /dev/null
  sed -e "s/BUCKET/$bucket/g" -e "s/ACCOUNT_ID/$account/g" "$here/iam/aws-$name-policy.json" \
    > "$policy"
  aws iam put-role-policy --role-name "$role" --policy-name "$role" \
    --policy-document "file://$policy"
  if ! aws iam get-instance-profile --instance-profile-name "$role" > /dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$role" > /dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
  fi
  echo "instance profile $role: ready"
done

# EC2 launches spot instances through the service-linked role AWSServiceRoleForEC2Spot. A fresh
# account has none until its first spot request, and RunInstances with spot market options from
# the head (whose policy may not create roles) is then refused. Created once, here; looked up by
# its path, which names the service.
spot_roles=$(aws iam list-roles --path-prefix /aws-service-role/spot.amazonaws.com/ \
  --query 'length(Roles)' --output text)
if [ "$spot_roles" = 0 ]; then
  aws iam create-service-linked-role --aws-service-name spot.amazonaws.com > /dev/null
fi
echo "EC2 Spot service-linked role: ready"
