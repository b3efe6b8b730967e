//! Unprivileged checks of the embedded eBPF object: it carries BTF, its programs and maps have
//! the names and layouts `veer-common` defines, and nothing uses the legacy `maps` section
//! (which libbpf, and so `bpftool prog loadall`, rejects).

use object::{Object, ObjectSection};
use veer_agent::{EBPF_OBJ, dataplane::layouts};
use veer_common::maps as names;

#[test]
fn object_carries_btf_and_no_legacy_maps_section() {
    let f = object::File::parse(EBPF_OBJ).expect("ELF");
    for s in [".BTF", ".BTF.ext", ".maps", "license"] {
        let sec = f
            .section_by_name(s)
            .unwrap_or_else(|| panic!("section {s} missing"));
        assert!(sec.size() > 0, "section {s} is empty");
    }
    assert!(
        f.section_by_name("maps").is_none(),
        "legacy `maps` section present"
    );
}

#[test]
fn programs_are_tc_classifiers_named_as_in_common() {
    let obj = aya_obj::Object::parse(EBPF_OBJ).expect("parse object");
    let mut progs: Vec<_> = obj.programs.keys().cloned().collect();
    progs.sort();
    assert_eq!(
        progs,
        vec![
            names::PROG_EGRESS.to_string(),
            names::PROG_INGRESS.to_string()
        ]
    );
    for (name, p) in &obj.programs {
        assert!(
            matches!(p.section, aya_obj::ProgramSection::SchedClassifier),
            "{name} is in section {:?}",
            p.section
        );
    }
}

#[test]
fn maps_have_the_layouts_common_defines() {
    let obj = aya_obj::Object::parse(EBPF_OBJ).expect("parse object");
    let mut in_obj: Vec<_> = obj.maps.keys().cloned().collect();
    in_obj.sort();
    let mut want: Vec<_> = names::ALL.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(in_obj, want, "map names");
    for l in layouts() {
        let m = &obj.maps[l.name];
        assert_eq!(m.map_type(), l.map_type as u32, "{} type", l.name);
        assert_eq!(m.key_size(), l.key_size, "{} key size", l.name);
        assert_eq!(m.value_size(), l.value_size, "{} value size", l.name);
        assert_eq!(m.max_entries(), l.max_entries, "{} max entries", l.name);
        assert_eq!(m.map_flags(), l.flags, "{} flags", l.name);
        assert!(
            l.name.len() <= 15,
            "{} is longer than a kernel object name",
            l.name
        );
        assert!(
            l.name.starts_with("VEER_") && l.name.contains("_V"),
            "{} not prefixed/versioned",
            l.name
        );
    }
}
