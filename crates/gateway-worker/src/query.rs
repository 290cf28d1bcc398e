//! Query parameters, read from the request URL's text.
//!
//! `worker::Request::url` parses the whole URL, and the `url` crate runs its
//! host through IDNA processing on every parse. The gateway reads the
//! `tenant` parameter of every request, and others on some routes: in the
//! chat bench's concurrent series that parsing was about 3 % of the
//! isolate's busy time (docs/benchmarks.md, sixteenth session). The runtime
//! hands the Worker an already serialized URL, so its query is the text
//! after the first `?` and before the `#`, decoded as a form
//! (`application/x-www-form-urlencoded`: `+` is a space, `%xx` a byte), as
//! `Url::query_pairs` decodes it.

/// The first value of parameter `name` in `url`'s query, decoded; `None`
/// when the URL has no query or the query has no such parameter.
pub fn param(url: &str, name: &str) -> Option<String> {
    // The fragment first: a `?` in it does not start a query.
    let url = url.split_once('#').map_or(url, |(url, _)| url);
    let (_, query) = url.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the URL parser's query pairs give for the same URL.
    fn parsed(url: &str, name: &str) -> Option<String> {
        let url = worker::Url::parse(url).unwrap();
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    #[test]
    fn parameters_are_those_of_the_parsed_url() {
        let urls = [
            "http://127.0.0.1:8787/api/chat/ws?sessionId=s-1&key=k",
            "http://localhost:8787/api/chat/ws?tenant=acme&sessionId=a%20b&key=k%2Bplus",
            "https://api.example.com/api/documents?cursor=doc%2F7&limit=20",
            "https://api.example.com/x?sessionId=one+two&sessionId=second",
            "https://api.example.com/x?key=&tenant",
            "https://api.example.com/x?=v&tenant=t=u&after=12#frag?tenant=no",
            "https://api.example.com/x?tenant=%E2%82%AC&key=%zz%41",
            "https://api.example.com/x?tenant=caf%C3%A9;&limit=%FF",
            "https://api.example.com/x",
            "https://api.example.com/x?",
            "https://api.example.com/x#?tenant=fragment-only",
            "https://xn--bcher-kva.example/x?tenant=idn-host",
        ];
        let names = ["sessionId", "key", "tenant", "cursor", "limit", "after", ""];
        let mut found = 0;
        for url in urls {
            for name in names {
                let ours = param(url, name);
                assert_eq!(ours, parsed(url, name), "{url} {name:?}");
                found += usize::from(ours.is_some());
            }
        }
        assert!(found > 15, "the cases find parameters: {found}");
    }

    #[test]
    fn values_are_decoded_as_a_form() {
        let url = "http://h/x?sessionId=one+two&key=k%2Bplus&tenant=a%20b&limit=";
        assert_eq!(param(url, "sessionId").as_deref(), Some("one two"));
        assert_eq!(param(url, "key").as_deref(), Some("k+plus"));
        assert_eq!(param(url, "tenant").as_deref(), Some("a b"));
        assert_eq!(param(url, "limit").as_deref(), Some(""));
        assert_eq!(param(url, "missing"), None);
        assert_eq!(param("http://h/x?a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(param("http://h/x#a=1", "a"), None);
    }
}
