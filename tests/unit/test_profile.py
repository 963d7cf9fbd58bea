"""Profile layering and every validation rule (one failing case each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import UsageError, ValidationError
from builder.site.profile import list_sites, load_profile, parse_overrides

REPO_PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def problems_of(site: str, *overrides: str, pdir: Path | None = None) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        load_profile(site, pdir, overrides)
    return exc.value.problems


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_profiles_load(workdir: Path, shipped_sites: list[str]) -> None:
    assert shipped_sites == ["aws", "onprem"]
    for site in shipped_sites:
        profile = load_profile(site)
        assert profile.layers[0] == "builder defaults"
        assert profile.layers[1] == "profiles/base.yaml"
        assert profile.layers[-1] == f"profiles/{site}.yaml"


def test_list_sites(workdir: Path) -> None:
    assert [(s, t) for s, t, _ in list_sites()] == [("aws", "ami"), ("onprem", "iso")]


def test_layering_deep_merges_mappings_and_replaces_lists(workdir: Path) -> None:
    profile = load_profile("onprem")
    # mapping from base kept, key from onprem added
    assert profile.spec.kubernetes.pod_cidr == "10.244.0.0/16"
    assert profile.spec.kubernetes.labels["topology.kubernetes.io/zone"] == "onprem-dc1"
    assert profile.get("kubernetes.pod_cidr") == "10.244.0.0/16"  # generic dotted access
    assert profile.source_of("kubernetes.pod_cidr") == "profiles/base.yaml"
    assert profile.source_of("kubernetes.labels") == "profiles/onprem.yaml"
    # a list replaces
    write(
        workdir / "profiles/x.yaml",
        "extends: base\ntarget: qcow2\ntime_sync: {servers: [a.example]}\n",
    )
    assert load_profile("x").spec.time_sync.servers == ("a.example",)


def test_extends_chain_and_set_is_last(workdir: Path) -> None:
    write(workdir / "profiles/lab.yaml", "extends: onprem\niso: {grub_timeout: 1}\n")
    profile = load_profile("lab", overrides=["iso.grub_timeout=3", "gpu.nvidia.variant=open"])
    assert profile.layers[-3:] == ("profiles/onprem.yaml", "profiles/lab.yaml", "--set")
    assert profile.spec.iso.grub_timeout == 3
    assert profile.spec.gpu.nvidia.variant == "open"
    assert profile.spec.gpu.enabled is True  # inherited through the chain


def test_extends_cycle(workdir: Path) -> None:
    write(workdir / "profiles/a.yaml", "extends: b\n")
    write(workdir / "profiles/b.yaml", "extends: a\n")
    assert "cycle" in problems_of("a")[0]


def test_extends_missing_parent(workdir: Path) -> None:
    write(workdir / "profiles/a.yaml", "extends: nothere\n")
    assert problems_of("a") == ["profiles/a.yaml: extends: no profile named 'nothere' in profiles"]


def test_required_modules_and_sysctls_always_present(workdir: Path) -> None:
    profile = load_profile("aws", overrides=["kernel.modules=[nf_conntrack, overlay]"])
    assert profile.modules == ["overlay", "br_netfilter", "nf_conntrack"]
    assert profile.sysctls["net.ipv4.ip_forward"] == "1"
    assert profile.sysctls["net.bridge.bridge-nf-call-ip6tables"] == "1"
    assert profile.sysctls["vm.overcommit_memory"] == "1"


# problems name the line where the layer's YAML has the key (issue 15 item 6)
BASE_SERVICE_CIDR_LINE = next(
    n
    for n, line in enumerate((REPO_PROFILES / "base.yaml").read_text().splitlines(), 1)
    if line.strip().startswith("service_cidr:")
)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "wireguard.overlay_cidr=10.96.0.0/16",
            f"profiles/base.yaml: line {BASE_SERVICE_CIDR_LINE}: kubernetes.service_cidr: "
            "10.96.0.0/12 overlaps wireguard.overlay_cidr",
        ),
        (
            "kubernetes.pod_cidr=10.200.0.0/24",
            "--set: kubernetes.pod_cidr: 10.200.0.0/24 overlaps wireguard.overlay_cidr",
        ),
        ("network.site_lan=10.244.1.0/24", "--set: network.site_lan: 10.244.1.0/24 overlaps"),
        (
            "wireguard.hub_overlay_ip=10.9.0.1",
            "--set: wireguard.hub_overlay_ip: 10.9.0.1 is outside the overlay",
        ),
        ("wireguard.hub_overlay_ip=10.200.255.255", "is the network or broadcast address"),
        ("wireguard.hub_overlay_ip=10.200.0.0", "is the network or broadcast address"),
        ("wireguard.overlay_cidr=10.200.0.1/16", "is not a network in CIDR form"),
        ("crio.version=1.34", "--set: crio.version: CRI-O 1.34 does not match Kubernetes 1.35"),
        ("kubernetes.version=v1.35.0", "--set: kubernetes.version: 'v1.35.0' is not a version"),
        ("kubernetes.version=1.2.3", "is not supported"),
        (
            "gpu.nvidia.variant=open",
            "--set: gpu.nvidia.variant: NVIDIA options are set but gpu.enabled is false",
        ),
        ("admin.password=hunter2", "--set: admin.password: must be a reference"),
        ("enrollment.site_token=abc123", "--set: enrollment.site_token: must be a reference"),
        ("kernel.sysctl={}", "--set: kernel.sysctl: unknown key (did you mean 'sysctls'?)"),
        ("wireguard.mut=1400", "--set: wireguard.mut: unknown key (did you mean 'mtu'?)"),
        ("wireguard.mtu=9", "--set: wireguard.mtu: 9 is less than the minimum of 1280"),
        (
            "wireguard.hub_public_key=abc",
            "--set: wireguard.hub_public_key: 'abc' is not in the "
            "expected form (a WireGuard public key",
        ),
        ("enrollment.url=http://hub:80", "--set: enrollment.url: 'http://hub:80' is not in the"),
        (
            "enrollment.ca_pin=sha256:" + "a" * 64,
            "--set: enrollment.ca_pin: does not match the CA certificate",
        ),
        (
            "kernel.sysctls={net.ipv4.ip_forward: 0}",
            "--set: kernel.sysctls.net.ipv4.ip_forward: must be 1 on a Kubernetes node",
        ),
        ("kubernetes.labels={'bad key!': x}", "not a valid label key"),
        ("kubernetes.taints=[{key: a, effect: Sometimes}]", "'Sometimes' is not one of"),
        ("target=iso", "iso.base.url: required for target iso"),
        ("aws.region=null", "aws.region: required for target ami"),
        (
            "aws.ami_users=['123456789012']",
            "--set: aws.ami_users: sharing the AMI needs aws.kms_key_id",
        ),
        (
            "aws.kms_key_id=arn:aws:kms:eu-west-1:123456789012:nokey",
            "--set: aws.kms_key_id: 'arn:aws:kms:eu-west-1:123456789012:nokey' is not in the "
            "expected form (a KMS key id, alias/NAME, or key/alias ARN)",
        ),
        ("iso.volume_id=lower", "--set: iso.volume_id: 'lower' is not in the expected form"),
        ("os.release=24", "--set: os.release: expected string, got an integer"),
        ("os.release='24'", "--set: os.release: '24' is not in the expected form"),
        ("wireguard.keepalive=yes", "--set: wireguard.keepalive: expected integer, got a boolean"),
        (
            "network.static={address: 192.168.5.10/24, gateway: 192.168.6.1}",
            "--set: network.static.gateway: 192.168.6.1 is not in 192.168.5.0/24",
        ),
    ],
)
def test_each_rule_fails(workdir: Path, override: str, expected: str) -> None:
    problems = problems_of("aws", override)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "key",
    [
        # the forms the Packer amazon plugin accepts (ValidateKmsKey; UPSTREAM.md, Packer)
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        "mrk-1234abcd12ab34cd56ef1234567890ab",
        "alias/nodeforge-ami",
        "arn:aws:kms:us-east-1:012345678910:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws-us-gov:kms:us-gov-west-1:012345678910:alias/ExampleAlias",
    ],
)
def test_sharing_an_ami_with_a_customer_managed_key_is_fine(workdir: Path, key: str) -> None:
    profile = load_profile("aws", None, ["aws.ami_users=['123456789012']", f"aws.kms_key_id={key}"])
    assert profile.spec.aws.kms_key_id == key and profile.spec.aws.ami_users == ("123456789012",)
    assert load_profile("aws", None, [f"aws.kms_key_id={key}"]).spec.aws.ami_users == ()


CMK = "alias/nodeforge-ami"
SHARE = ["aws.ami_users=['123456789012']", f"aws.kms_key_id={CMK}"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # copies in other regions are encrypted with THOSE regions' default keys unless
        # region_kms_key_ids names one (Packer's kms_key_id doc comment): Packer accepts the
        # build, and the accounts it is shared with cannot launch those copies
        (
            [*SHARE, "aws.ami_regions=[us-west-2, us-east-1]"],
            "--set: aws.ami_users: the copies in us-west-2, us-east-1 would be encrypted "
            "with those regions' default KMS keys, which cannot be shared: set "
            "aws.region_kms_key_ids",
        ),
        # Packer refuses a map that does not list every region of ami_regions, and a region
        # that is not in ami_regions (ami_config.go Prepare/prepareRegions)
        (
            ["aws.ami_regions=[us-west-2, us-east-1]",
             f"aws.region_kms_key_ids={{us-west-2: {CMK}}}"],
            "--set: aws.region_kms_key_ids: no key for us-east-1 (in aws.ami_regions)",
        ),
        (
            ["aws.ami_regions=[us-west-2]",
             f"aws.region_kms_key_ids={{us-west-2: {CMK}, us-east-1: {CMK}}}"],
            "--set: aws.region_kms_key_ids: us-east-1 is not in aws.ami_regions",
        ),
        # "" is that region's default key: Packer refuses it for a shared AMI
        (
            [*SHARE, "aws.ami_regions=[us-west-2]", "aws.region_kms_key_ids={us-west-2: ''}"],
            "--set: aws.ami_users: the copies in us-west-2 would be encrypted",
        ),
        (
            ["aws.ami_regions=[us-west-2]", "aws.region_kms_key_ids={us-west-2: nokey!}"],
            "--set: aws.region_kms_key_ids.us-west-2: 'nokey!' is not in the expected form",
        ),
        (
            ["aws.ami_regions=[us-west-2]", f"aws.region_kms_key_ids={{Frankfurt: {CMK}}}"],
            "--set: aws.region_kms_key_ids: 'Frankfurt' is not in the expected form (an AWS "
            "region name, like eu-central-1)",
        ),
    ],
    ids=["copies-default-key", "map-misses-a-region", "map-extra-region", "shared-empty-key",
         "bad-key", "bad-region"],
)  # fmt: skip
def test_ami_copies_to_other_regions_need_their_own_keys(
    workdir: Path, overrides: list[str], expected: str
) -> None:
    problems = problems_of("aws", *overrides)
    assert any(expected in p for p in problems), problems


def test_shared_ami_copies_with_a_key_per_region_are_fine(workdir: Path) -> None:
    keys = {"us-west-2": CMK, "us-east-1": "mrk-1234abcd12ab34cd56ef1234567890ab"}
    profile = load_profile(
        "aws", None,
        [*SHARE, "aws.ami_regions=[us-west-2, us-east-1]",
         "aws.region_kms_key_ids={us-west-2: alias/nodeforge-ami, "
         "us-east-1: mrk-1234abcd12ab34cd56ef1234567890ab}"],
    )  # fmt: skip
    assert dict(profile.spec.aws.region_kms_key_ids) == keys
    # the build region's own key may come from the map instead of kms_key_id (Packer: the
    # map's entry for the build region wins)
    build = profile.spec.aws.region
    ok = load_profile(
        "aws", None,
        ["aws.ami_users=['123456789012']", f"aws.ami_regions=[{build}]",
         f"aws.region_kms_key_ids={{{build}: {CMK}}}"],
    )  # fmt: skip
    assert ok.spec.aws.kms_key_id is None


def test_every_problem_reported_at_once_and_sorted(workdir: Path) -> None:
    problems = problems_of("aws", "crio.version=1.30", "wireguard.mtu=1", "nope=1")
    assert len(problems) == 3
    assert problems == sorted(problems)


def test_unknown_key_in_file_names_the_file(workdir: Path) -> None:
    path = workdir / "profiles/aws.yaml"
    line = len(path.read_text().splitlines()) + 1
    write(path, path.read_text() + "wiregaurd: {mtu: 1400}\n")
    assert problems_of("aws") == [
        f"profiles/aws.yaml: line {line}: wiregaurd: unknown key (did you mean 'wireguard'?)"
    ]


def test_yaml_syntax_error_names_line(workdir: Path) -> None:
    write(workdir / "profiles/bad.yaml", "target: iso\nos: [unclosed\n")
    (problem,) = problems_of("bad")
    assert problem.startswith("profiles/bad.yaml: line ")


def test_duplicate_key_rejected(workdir: Path) -> None:
    write(workdir / "profiles/dup.yaml", "target: iso\ntarget: ami\n")
    assert "duplicate key 'target'" in problems_of("dup")[0]


def test_top_level_must_be_mapping(workdir: Path) -> None:
    write(workdir / "profiles/list.yaml", "- a\n- b\n")
    assert problems_of("list") == [
        "profiles/list.yaml: the top level must be a mapping, not a list"
    ]


def test_missing_site_is_usage_error_with_hint(workdir: Path) -> None:
    with pytest.raises(UsageError) as exc:
        load_profile("onprim")
    assert exc.value.message == "profiles/onprim.yaml: no such site profile"
    assert exc.value.hint == "did you mean 'onprem'?"


def test_bad_site_name(workdir: Path) -> None:
    with pytest.raises(UsageError):
        load_profile("../etc/passwd")


def test_overrides_parse_yaml_values_and_keep_versions_as_strings() -> None:
    assert parse_overrides(["a.b=1", "a.c=true", "d=1.35", "e=[x, y]", "f="]) == {
        "a": {"b": 1, "c": True},
        "d": "1.35",
        "e": ["x", "y"],
        "f": "",
    }
    with pytest.raises(ValidationError):
        parse_overrides(["novalue"])
    with pytest.raises(ValidationError):
        parse_overrides(["a..b=1"])


def test_secret_references_resolve_and_mask(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NF_TEST_PW", "s3cret-pw")
    write(workdir / "token.txt", "tok-123\n")
    profile = load_profile(
        "aws",
        overrides=["admin.password=env:NF_TEST_PW", "enrollment.site_token=file:../token.txt"],
    )
    assert profile.resolve_secret("admin.password") == "s3cret-pw"
    # file: is relative to the layer that set it; --set layers resolve against the cwd
    masked = profile.masked()
    assert masked["admin"]["password"] == "env:***"
    assert masked["enrollment"]["site_token"] == "file:***"
    assert "s3cret-pw" not in str(masked)


def test_missing_env_secret_names_key(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NF_UNSET", raising=False)
    profile = load_profile("aws", overrides=["admin.password=env:NF_UNSET"])
    with pytest.raises(UsageError) as exc:
        profile.resolve_secret("admin.password")
    assert exc.value.message == ("--set: admin.password: environment variable NF_UNSET is not set")


def test_profile_is_frozen(workdir: Path) -> None:
    profile = load_profile("aws")
    with pytest.raises(TypeError):
        profile.data["target"] = "iso"  # type: ignore[index]
    with pytest.raises(AttributeError):
        profile.get("kernel.modules").append("x")


def test_input_hash_changes_with_inputs(workdir: Path) -> None:
    a = load_profile("aws").input_hash
    assert load_profile("aws").input_hash == a
    assert load_profile("aws", overrides=["wireguard.mtu=1400"]).input_hash != a
