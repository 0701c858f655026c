//! Which reply queues `mtls_reply_queues` may delete: those of instances no longer in the fleet,
//! and never so many, or with so little to go on, that a broken inventory wipes the fleet's; or
//! exactly the queues of instances being removed (a node's `state: absent`).

use std::collections::BTreeSet;

use thiserror::Error;

use crate::policy::is_valid_instance_id;
use crate::wire::reply_queue_name;

/// Why nothing is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CleanupRefusal {
    #[error("keep_instance_ids is empty, so all {found} reply queues would be deleted: an inventory that failed to load gives an empty list. Check the list, or set force: true to delete every reply queue")]
    NothingToKeep { found: usize },
    #[error("{stale} reply queues are not in keep_instance_ids, more than max_delete={max_delete}: check the list, or raise max_delete")]
    TooMany { stale: usize, max_delete: u64 },
}

/// The queues not kept, in the order listed, and whether deleting them is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Cleanup<'a> {
    pub stale: Vec<&'a str>,
    pub kept: usize,
    pub refused: Option<CleanupRefusal>,
}

/// Decides the cleanup of `queue_urls` (the queues named `prefix` + something): those whose name
/// is not `prefix` + a kept instance id go, at most `max_delete` of them. An empty keep list is
/// refused unless `force` (it deletes every reply queue); with no queue at all it is harmless.
pub fn plan_cleanup<'a>(
    keep_instance_ids: &[String],
    prefix: &str,
    queue_urls: &'a [String],
    max_delete: u64,
    force: bool,
) -> Cleanup<'a> {
    let keep: BTreeSet<String> = keep_instance_ids
        .iter()
        .map(|id| format!("{prefix}{id}"))
        .collect();
    let stale: Vec<&str> = queue_urls
        .iter()
        .map(String::as_str)
        .filter(|url| {
            url.rsplit('/')
                .next()
                .is_some_and(|name| !keep.contains(name))
        })
        .collect();
    let refused = if keep_instance_ids.is_empty() && !force && !queue_urls.is_empty() {
        Some(CleanupRefusal::NothingToKeep {
            found: queue_urls.len(),
        })
    } else if stale.len() as u64 > max_delete {
        Some(CleanupRefusal::TooMany {
            stale: stale.len(),
            max_delete,
        })
    } else {
        None
    };
    Cleanup {
        kept: queue_urls.len() - stale.len(),
        stale,
        refused,
    }
}

/// An instance id in `remove_instance_ids` that cannot name a reply queue.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("remove_instance_ids has '{0}', which is not an instance id (1 to 64 letters, digits, '-' or '_'): nothing was deleted")]
pub struct InvalidInstanceId(pub String);

/// The names of the reply queues of `instance_ids` (deduplicated, in order): exactly theirs, so
/// no other queue matches by prefix. Refused as a whole when one id cannot be a queue name.
pub fn removal_names(
    prefix: &str,
    instance_ids: &[String],
) -> Result<Vec<String>, InvalidInstanceId> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for id in instance_ids {
        if !is_valid_instance_id(id) {
            return Err(InvalidInstanceId(id.clone()));
        }
        if seen.insert(id.as_str()) {
            names.push(reply_queue_name(prefix, id));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "fleetpki-reply-";

    fn urls(ids: &[&str]) -> Vec<String> {
        ids.iter()
            .map(|id| format!("https://sqs.eu-west-1.amazonaws.com/123456789012/{PREFIX}{id}"))
            .collect()
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_queues_of_instances_not_kept_go() {
        let all = urls(&["i-1", "i-2", "i-3"]);
        let plan = plan_cleanup(&ids(&["i-1", "i-3"]), PREFIX, &all, 100, false);
        assert_eq!(plan.stale, vec![all[1].as_str()]);
        assert_eq!(plan.kept, 2);
        assert_eq!(plan.refused, None);
    }

    #[test]
    fn an_empty_keep_list_deletes_nothing_unless_forced() {
        let all = urls(&["i-1", "i-2", "i-3"]);
        assert_eq!(
            plan_cleanup(&[], PREFIX, &all, 100, false).refused,
            Some(CleanupRefusal::NothingToKeep { found: 3 })
        );
        let forced = plan_cleanup(&[], PREFIX, &all, 100, true);
        assert_eq!(
            (forced.stale.len(), forced.kept, forced.refused),
            (3, 0, None)
        );
        // Nothing there: nothing to protect.
        assert_eq!(plan_cleanup(&[], PREFIX, &[], 100, false).refused, None);
    }

    #[test]
    fn never_more_than_max_delete_even_when_forced() {
        let all = urls(&["i-1", "i-2", "i-3"]);
        let refused = Some(CleanupRefusal::TooMany {
            stale: 3,
            max_delete: 2,
        });
        assert_eq!(
            plan_cleanup(&ids(&["i-9"]), PREFIX, &all, 2, false).refused,
            refused
        );
        assert_eq!(plan_cleanup(&[], PREFIX, &all, 2, true).refused, refused);
    }

    #[test]
    fn removal_names_exactly_the_queues_of_the_instances_given() {
        assert_eq!(
            removal_names(PREFIX, &ids(&["i-1", "i-2", "i-1"])),
            Ok(vec![format!("{PREFIX}i-1"), format!("{PREFIX}i-2")])
        );
        assert_eq!(removal_names(PREFIX, &[]), Ok(vec![]));
        // A wildcard or a path could reach other queues: the whole list is refused.
        assert_eq!(
            removal_names(PREFIX, &ids(&["i-1", "i-*"])),
            Err(InvalidInstanceId("i-*".into()))
        );
        assert!(removal_names(PREFIX, &ids(&[""])).is_err());
    }

    #[test]
    fn the_refusals_say_what_to_do() {
        let empty = CleanupRefusal::NothingToKeep { found: 3 }.to_string();
        assert!(
            empty.contains("force: true") && empty.contains("all 3 reply queues"),
            "{empty}"
        );
        let many = CleanupRefusal::TooMany {
            stale: 5,
            max_delete: 2,
        }
        .to_string();
        assert!(many.contains("max_delete=2"), "{many}");
    }
}
