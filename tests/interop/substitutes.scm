;;; substitutes.scm -- the substitute queries: has-substitutes?,
;;; substitutable-paths, substitutable-path-info, the obsolete
;;; query-substitutable-path-info (op 21), substitute-urls, and how
;;; set-build-options changes them.
;;;
;;; Argument: "disabled" (the daemon runs with --no-substitutes) or
;;; "enabled" (its substitute URL is a `file://' directory with nothing in
;;; it, so substitutes are on but none exist).

(load (string-append (dirname (current-filename)) "/common.scm"))

(define mode
  (match (script-arguments)
    (("disabled") 'disabled)
    (("enabled") 'enabled)
    (x (error "usage: substitutes.scm OUT.json disabled|enabled" x))))

(define s (connect))

(define item (add-text-to-store s "item" "some item\n" '()))

(define (query-substitutable-path-info store path)
  (raw-operation store 21
                 (lambda (p) (write-string path p))
                 (lambda (p)
                   (if (zero? (read-int p))
                       'null
                       `(("deriver" . ,(read-string p))
                         ("references" . ,(list->vector (read-string-list p)))
                         ("download_size" . ,(read-long-long p))
                         ("nar_size" . ,(read-long-long p)))))))

(define (queries! tag)
  "The substitute queries on ITEM and on a missing path; nothing is ever
substitutable here."
  (define (label what) (string-append tag ": " what))
  (check! (label "has-substitutes? valid")
          (equal? (step! (label "has-substitutes? valid")
                         (lambda () (has-substitutes? s item)))
                  '(ok . #f)))
  (check! (label "has-substitutes? missing")
          (equal? (step! (label "has-substitutes? missing")
                         (lambda () (has-substitutes? s %missing)))
                  '(ok . #f)))
  (check! (label "substitutable-paths")
          (equal? (expect-ok! (label "substitutable-paths")
                              (lambda ()
                                (substitutable-paths s (list item %missing)))
                              #:encode paths->json)
                  '()))
  (check! (label "substitutable-path-info")
          (equal? (expect-ok! (label "substitutable-path-info")
                              (lambda ()
                                (substitutable-path-info s (list %missing item)))
                              #:encode (lambda (l) (list->vector
                                                    (map substitutable-path l))))
                  '()))
  (check! (label "substitutable-path-info, none asked")
          (equal? (expect-ok! (label "substitutable-path-info, none asked")
                              (lambda () (substitutable-path-info s '()))
                              #:encode list->vector)
                  '()))
  (expect-ok! (label "query-substitutable-path-info missing")
              (lambda () (query-substitutable-path-info s %missing)))
  (step-alive! (label "alive") s #t))

;;; As the daemon was started.

(define %daemon-urls
  (match mode
    ('disabled '())
    ('enabled (list (string-append "file://" (it-dir) "/substitutes")))))

(check! "substitute-urls as started"
        (equal? (expect-ok! "substitute-urls as started"
                            (lambda () (substitute-urls s))
                            #:encode list->vector)
                %daemon-urls))
(queries! "as started")
(let ((o (step! "ensure-path missing" (lambda () (ensure-path s %missing)))))
  (check! "ensure-path missing fails" (error? o) o))
(step-alive! "alive after ensure-path missing" s #t)

;;; A client's own substitute URLs (the client is root, so trusted).

(define %client-urls
  (list (string-append "file://" (it-dir) "/substitutes")
        (string-append "file://" (it-dir) "/no-such-directory")))

(expect-ok! "set-build-options with substitute URLs"
            (lambda ()
              (set-build-options s #:use-substitutes? #t
                                 #:substitute-urls %client-urls)))
(check! "substitute-urls from the client"
        (equal? (expect-ok! "substitute-urls from the client"
                            (lambda () (substitute-urls s))
                            #:encode list->vector)
                (match mode
                  ('disabled '())
                  ('enabled %client-urls))))
(queries! "client URLs")

;;; Substitutes turned off by the client.

(expect-ok! "set-build-options without substitutes"
            (lambda () (set-build-options s #:use-substitutes? #f)))
(check! "substitute-urls with substitutes off"
        (equal? (expect-ok! "substitute-urls with substitutes off"
                            (lambda () (substitute-urls s))
                            #:encode list->vector)
                '()))
(queries! "client turned substitutes off")

;;; Turned on again: the C++ daemon applies a client's "use substitutes"
;;; only while substitutes are on, so once a session turned them off they
;;; stay off for that session.

(expect-ok! "set-build-options with substitutes again"
            (lambda () (set-build-options s #:use-substitutes? #t)))
(check! "substitute-urls with substitutes on again"
        (equal? (expect-ok! "substitute-urls with substitutes on again"
                            (lambda () (substitute-urls s))
                            #:encode list->vector)
                '()))
(queries! "on again")

;;; Op 21 on a path outside the store, on a connection of its own: the
;;; C++ daemon hands it to its substituter agent as it is.

(let ((c (connect)))
  (step! "query-substitutable-path-info not in store"
         (lambda () (query-substitutable-path-info c "/etc/passwd")))
  (record! "alive after query-substitutable-path-info not in store"
           (alive? c)))

(finish!)
