use super::check::strip_types;
use super::files::par_map;

#[test]
fn type_prefixes_are_stripped_per_segment() {
    assert_eq!(
        strip_types("/System/(CategoryGroup)Filter Categories/(Category)misc"),
        "/System/Filter Categories/misc"
    );
    assert_eq!(strip_types("/a/(not a type)b"), "/a/(not a type)b");
    assert_eq!(
        strip_types("/Environment Configuration/Service/(slash)demo"),
        "/Environment Configuration/Service/demo"
    );
    assert_eq!(strip_types("/x/y"), "/x/y");
}

#[test]
fn parallel_map_keeps_order() {
    let v = par_map(1000, 4, |i| i * 2);
    assert_eq!(v.len(), 1000);
    assert!(v.iter().enumerate().all(|(i, x)| *x == i * 2));
}
