;;; store-paths.scm -- store path vectors: text items, sources, fixed outputs.
;;;
;;; Each path is computed by the client library ((guix store) `store-path'
;;; and `fixed-output-path') and, where the daemon has an operation for it,
;;; also obtained from the real daemon (add-text-to-store, add-to-store).
;;; Writes the JSON object described under "store-paths.json" in README.md.

(load (string-append (dirname (current-filename)) "/common.scm"))

(define store (connect))

;;; Text items (add-text-to-store, op 8).

(define %texts
  ;; (NAME CONTENTS (REFERENCE-LABEL ...)); references name earlier items,
  ;; deliberately listed unsorted.
  `(("hello" ,(utf8 "world") ())
    ("empty" ,(make-bytevector 0) ())
    ("utf8-text" ,(utf8 "h\u00e9llo \u2713\n") ())
    ("binary" ,#vu8(0 1 2 255 254 0 10 13) ())
    ("with-one-ref" ,(utf8 "refers to hello") ("hello"))
    ("with-refs" ,(utf8 "refers to several") ("with-one-ref" "empty" "hello"))
    ("name-with+odd=chars?._-" ,(utf8 "x") ())))

(define %text-paths '())                          ;label -> daemon path

(define (text-case entry)
  (match entry
    ((name contents ref-labels)
     (let* ((refs (map (cut assoc-ref %text-paths <>) ref-labels))
            (client (text-path name contents refs))
            (daemon (add-data-to-store store name contents refs)))
       (set! %text-paths (cons (cons name daemon) %text-paths))
       `(("name" . ,name)
         ("contents_hex" . ,(hex contents))
         ("references" . ,(arr refs))
         ("contents_sha256_hex" . ,(hex (sha256 contents)))
         ("path" . ,client)
         ("daemon_path" . ,daemon))))))

;;; Sources (add-to-store, recursive, sha256).

(define %sources
  `(("f.txt" (regular ,(utf8 "hi\n")))
    ("x" (executable ,(utf8 "#!/bin/sh\n")))
    ("link" (symlink "/nowhere"))
    ("tree" (directory ("b" (regular ,(utf8 "bee")))
                       ("a" (directory ("c" (executable ,(utf8 "sea")))))
                       ("l" (symlink "a/c"))))))

(define (source-case entry)
  (match entry
    ((name tree)
     (let* ((file (materialise tree))
            (nar (nar-bytes file))
            (nar-hash (sha256 nar))
            (client (fixed-output-path name nar-hash
                                       #:hash-algo 'sha256 #:recursive? #t))
            (daemon (add-to-store store name #t "sha256" file)))
       `(("name" . ,name)
         ("tree" . ,(tree->json tree))
         ("nar_sha256_hex" . ,(hex nar-hash))
         ("path" . ,client)
         ("daemon_path" . ,daemon))))))

;;; Fixed outputs: every algorithm, flat and recursive.

(define %fixed-trees
  ;; (NAME TREE) added in both modes with every algorithm; the flat mode
  ;; needs a regular file.
  `(("f.txt" (regular ,(utf8 "hi\n")))
    ("x" (executable ,(utf8 "#!/bin/sh\n")))))

(define (fixed-case name tree algo recursive?)
  (let* ((file (materialise tree))
         (content (if recursive? (nar-bytes file) (tree-regular-contents tree)))
         (h (digest algo content))
         (client (fixed-output-path name h #:hash-algo algo
                                    #:recursive? recursive?)))
    (call-with-values
        (lambda ()
          ;; A fresh connection each time: the client memoises add-to-store
          ;; per connection, and an unsupported algorithm ends the session.
          (let ((s (connect)))
            (daemon-error
             (lambda ()
               (add-to-store s name recursive? (symbol->string algo) file)))))
      (lambda (daemon message status)
        `(("name" . ,name)
          ("algo" . ,(symbol->string algo))
          ("recursive" . ,recursive?)
          ("tree" . ,(tree->json tree))
          ("hash_hex" . ,(hex h))
          ("path" . ,client)
          ("daemon_path" . ,(or daemon 'null))
          ,@(if message
                `(("daemon_error" . ,message))
                '()))))))

(define %fixed
  (append-map (match-lambda
                ((name tree)
                 (append-map (lambda (recursive?)
                               (map (cut fixed-case name tree <> recursive?)
                                    %algorithms))
                             '(#f #t))))
              %fixed-trees))

(write-json!
 `(("store_dir" . ,(%store-prefix))
   ("text" . ,(arr (map text-case %texts)))
   ("source" . ,(arr (map source-case %sources)))
   ("fixed" . ,(arr %fixed))))
